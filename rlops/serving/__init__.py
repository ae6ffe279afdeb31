"""The prediction endpoint, one job per module.

  policy     the serving rule: greedy arm and exact epsilon-greedy propensities
  watcher    finds, validates and hot-swaps the newest pushed version
  outbox     durable prediction log: outbox file, delivery thread, dead letters
  parsing    parses and validates prediction requests as the warehouse will
  recent     recently served request ids, shared by the worker processes: one id, one logged action
  app        the ASGI app: the lean predict route in front of FastAPI's other routes
  protocol   uvicorn's HTTP protocol answering the predict route in its parser callbacks
  server     running it: a loopback thread, worker processes, Vertex's environment
"""
