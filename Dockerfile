FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY messages messages
COPY core core
COPY publisher publisher
COPY state_receiver state_receiver
COPY agent agent
COPY resync resync
RUN pip install --no-cache-dir .
ENTRYPOINT ["resync"]
