# The hub service image: the client and the hub (the [hub] extra), no torch.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY peft_hub ./peft_hub
RUN pip install ".[hub]" && useradd --create-home --uid 10001 hub
USER hub
ENV PEFT_HUB_HOST=0.0.0.0 PEFT_HUB_PORT=8000 PEFT_HUB_HOME=/home/hub/.peft-hub
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
  CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/api/health'); sys.exit(0)"
CMD ["peft-hub", "serve"]
