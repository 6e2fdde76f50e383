"""The Celery worker: tasks that call the LLM server's OpenAI-compatible API."""
