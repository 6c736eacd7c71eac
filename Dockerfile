# One image for every choreo service; the command picks which (`choreo serve order`, ...).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY requirements-dev.txt ./
COPY choreo ./choreo
COPY services ./services
COPY gen ./gen
COPY catalog ./catalog
# The same locked versions as CI: every package from the lock with its hashes, nothing resolved.
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements-dev.txt \
 && pip install --no-cache-dir --no-deps --no-build-isolation -e .
ENV CHOREO_GRPC_HOST=0.0.0.0 \
    CHOREO_GRPC_PORT=50051 \
    CHOREO_DATA_DIR=/data \
    CHOREO_CATALOG=/app/catalog/default.json
VOLUME ["/data"]
EXPOSE 50051
ENTRYPOINT ["choreo"]
