"""The AWS backend: Pulumi Automation API to deploy and destroy, boto3 to watch and sweep."""

from experiments.backends.aws.backend import AwsBackend
from experiments.backends.aws.deployment import AwsDeployment

__all__ = ["AwsBackend", "AwsDeployment"]
