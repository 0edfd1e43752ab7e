"""``python -m triows``: run the server (see ``python -m triows --help``)."""

import sys

from ._cli.main import main

sys.exit(main())
