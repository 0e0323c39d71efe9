FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY ostinato ostinato
COPY schema schema
COPY producers producers
COPY workers workers
RUN pip install --no-cache-dir . && useradd --create-home ostinato
USER ostinato
ENTRYPOINT ["ostinato"]
