"""Storage of run directories: S3 push / pull / list (`tfkit.storage.s3`) and the
background pusher the trainer uses (`tfkit.storage.uploader`).

Importing this package does not import boto3; connecting a store does.
"""
