"""The web doors: the aiohttp application, its one routing table and every handler.

Only this package knows requests and responses. Handlers parse the request, call the share
domain (``cloudsession.shares``), and shape the answer; errors raised by the domain carry their
status and are turned into responses by ``middleware.py``.
"""
