"""The prediction endpoint, one job per module.

  policy     the serving rule: greedy arm and exact epsilon-greedy propensities
  watcher    finds, validates and hot-swaps the newest pushed version
  outbox     durable prediction log: outbox file, delivery thread, dead letters
  requests   parses and validates prediction requests as the warehouse will
  recent     recently served request ids, so one id is one logged action
  app        the ASGI app: the lean predict route in front of FastAPI's other routes
  server     running it: a loopback thread, worker processes, Vertex's environment
"""
