"""The server (``lepton serve``): the champion answering requests in real time.

``model.py`` loads one model version and scores typed rows with it; ``follower.py`` follows the
champion pointer and swaps versions without a restart; ``batcher.py`` gathers requests into
batches; ``protocol.py`` reads and writes the Open Inference Protocol (KServe v2) and the plain
``/predict`` form; ``app.py`` is the ASGI application (Starlette, run by uvicorn) with access
control and limits; ``metrics.py`` the Prometheus metrics; ``sampler.py`` writes a sample of
served traffic to the artifact store for monitoring.
"""
