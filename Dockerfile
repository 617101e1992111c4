# trade_canvas in a container: `docker build -t trade_canvas .`, then
#   docker run -p 8000:8000 -v tc-data:/data -e TRADE_CANVAS_API_TOKEN=... trade_canvas
# (README "Operating it"). One process, one gevent worker, SQLite in /data unless Postgres is set.
FROM python:3.11-slim

WORKDIR /app
COPY setup.py setup.cfg README.md ./
COPY trade_canvas ./trade_canvas
COPY config ./config
RUN pip install --no-cache-dir . && useradd --system --home /data trade_canvas \
    && mkdir -p /data && chown trade_canvas /data

ENV TRADE_CANVAS_DB_PATH=/data/market.db \
    TRADE_CANVAS_ARTIFACTS_DIR=/data/artifacts \
    TRADE_CANVAS_LOG_FORMAT=json \
    PYTHONUNBUFFERED=1
USER trade_canvas
VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s \
    CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/api/health', timeout=2)"
# Serving on 0.0.0.0 needs TRADE_CANVAS_API_TOKEN (or TRADE_CANVAS_ALLOW_UNAUTHENTICATED=1).
CMD ["python", "-m", "trade_canvas", "serve", "--host", "0.0.0.0", "--port", "8000"]
