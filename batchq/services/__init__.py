"""What the HTTP API's routes and the dashboard call: one implementation of every operation, with its
checks, scoped to an owner. ``batches`` (create, cancel), ``files`` (accept an upload, delete),
``uploads`` (the Uploads API), ``results`` (the results feed), ``retry`` (a new batch of the lines that
did not succeed). Each takes the ``Runtime`` (the stores) and raises ``batchq.errors`` exceptions,
which ``batchq.api.errors`` maps to HTTP answers.
"""
