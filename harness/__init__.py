"""harness: a webhook gate for chatbot flows, and a scenario harness that drives it."""
