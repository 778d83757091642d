"""The domain core: bots, the flow engine and the gate. Plain Python and trio, no HTTP.

Import the public names from :mod:`harness`; the modules here are the implementation.
"""
