"""The neutral AWS room: boto3 client construction (``aws.clients``) and the translation of
botocore errors into the p13n error tree (``aws.errors``). It imports ``schemas`` only; every
room that calls AWS imports it."""
