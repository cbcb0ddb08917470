"""Storage of run directories: S3 push / pull / list (`tfkit.storage.s3`) and the
background pusher the trainer uses (`tfkit.storage.uploader`).

Importing this package does not import boto3; connecting a store does. The defaults
below live here so that the CLI can show them without importing the modules.
"""

DEFAULT_TIMEOUT = 30.0  # seconds to wait for a connection to S3, and then for each answer
TIMEOUT_ATTEMPTS = 3  # a request that gets no answer in time is tried this often in all
