"""orthoserve's error core, importable from every layer (adapters/, router/, server/) without cycles.

- `errors.domain`: `DomainError`, the one error type; each layer subclasses it in its own `errors.py`.
- `errors.envelope`: OpenAI's error envelope, the one builder of every error body the server sends.
"""
