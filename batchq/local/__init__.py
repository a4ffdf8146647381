"""batchq on one machine, and the parts the tests and benchmarks start: ``serve`` (the supervisor of
an embedded Redis, the API and a worker), ``embedded`` (finding and starting ``redis-server``),
``stack`` (a whole stack of real processes on free loopback ports), ``demo`` (``batchq demo``) and
``mock_upstream`` (an OpenAI-compatible upstream with engine, queue and gateway models).
"""
