"""The Redis broker, one part per module; each imports only the ones listed before it.

==============  ===============================================================================
``events``      what the listener thread hands to trio
``clients``     opening clients: one Redis, or a Redis Cluster found from the URL
``shards``      listening to a cluster: a pub/sub connection per shard, slots that move
``bridge``      the threads: one redis-py call per hop, and the pub/sub listener thread
``commands``    stream and numbering reads that both a catch-up and a resume make
``tasks``       where the broker's background tasks run, restarted with backoff on a bug
``link``        which parts of the link are down and why; the retrying call
``publisher``   publications, from the outage buffer to Redis's numbered answer
``feeds``       the followed channels and their in-order, exactly-once delivery
``resume``      what a subscribe with ``since`` missed, read from the stream
``watchdog``    pings that find a silent pub/sub link; the listener's wake-up
``broker``      :class:`~triows._brokers.redis.broker.RedisBroker`: builds and wires the parts
``presence_store``  presence in Redis hashes and events, over the broker's calls
==============  ===============================================================================

Nothing is imported here, so that loading one part (the bridge, say) does not load them all.
"""
