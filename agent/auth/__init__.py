"""Security: identities and their NATS permissions (`auth init`), verifying signed requests, the local policy."""
