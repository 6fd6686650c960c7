"""This host: CPU pinning and quotas, vector-instruction limits, processes, fingerprint, timing.

Used by every other layer; imports nothing from them.
"""
