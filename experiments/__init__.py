"""scalelab experiments: deploy each stack, load it, diagnose it, price it, report it.

Keep this file import-free: `stacks/` and the Pulumi program import `experiments.catalog`,
and the load driver's child process must not pull in boto3 or Pulumi.
"""
