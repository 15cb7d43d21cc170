"""The HTTP front end: Flask app (`app`), lookup cache (`cache`), order routing
and leader election (`leader`), production WSGI server (`server`).

The front end owns no durable state: it is safe to restart at any time.
"""
