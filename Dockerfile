# driftline daemon image. Built by docker-compose.yml (`build: .`); by hand:
#   docker build -t driftline .
#   docker run --rm -v "$PWD/examples:/etc/driftline:ro" -p 9108:9108 driftline \
#     run --config /etc/driftline/driftline.yml
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# The build context is only what the package needs (see .dockerignore).
COPY . .
RUN pip install ".[postgres,parquet]"

RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/driftline --create-home \
      --shell /usr/sbin/nologin driftline
# The default SQLite database (sqlite:///driftline.db) lands in the working directory.
WORKDIR /var/lib/driftline
USER driftline

EXPOSE 9108
ENTRYPOINT ["driftline"]
CMD ["run", "--config", "/etc/driftline/driftline.yml"]
