"""Helpers the tests share: real processes on loopback, and parsing what they serve."""
