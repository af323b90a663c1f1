"""tests/trainer: its helper modules (fake_imds, fault_proxy) importable from every subfolder.

pytest (prepend import mode) puts this folder on ``sys.path`` when it imports this conftest.
"""
