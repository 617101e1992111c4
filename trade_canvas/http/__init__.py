"""Falcon WSGI app: resources per URL noun, WebSocket and SSE streams, the error table."""
