"""Stage 2, local fine-tuning: verified model, encrypted data, air gap, QLoRA, export.

Kept import-light on purpose: ``invoke --list`` imports the cli modules, so nothing heavy
(torch, transformers, boto3) may be imported here.
"""
