"""Tools for attacking and observing a running perception node (fuzz cases, a DDS harness)."""
