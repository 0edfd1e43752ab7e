"""Sans-I/O core: protocol codec, channel hub, outboxes, framing, token checks.

Nothing here imports trio, sockets or redis, and nothing reads a clock: the shell passes time
in. ``tests/core/test_layering.py`` holds the package to that.
"""
