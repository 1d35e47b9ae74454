"""What several adapters share: the streaming renderer, the rate limiter, Markdown per platform, HTTP
helpers (JSON bodies, uploads, languages) and the auth dependencies of their routes."""
