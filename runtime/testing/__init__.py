"""Test doubles that are real servers: an OpenAI-compatible endpoint that misbehaves on request."""
