"""AppBundle component: the app directory as a private, encrypted S3 object.

The instances fetch it with their own role (read access to this one object only), so no bucket is
public and no secret goes into user data. The key carries a digest of the files: changed code
means a new key, new user data and therefore new instances (`user_data_replace_on_change`).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_aws as aws

from stacks.tags import resource_tags
from stacks.variant import PROJECT_DIR, Variant, VariantError

EXCLUDED_DIRS = frozenset({
    ".git", ".venv", "venv", "results", "__pycache__", "var", ".scalelab", ".pytest_cache",
    ".ruff_cache", ".mypy_cache", "node_modules", ".tox",
})
"""Never shipped: environments, caches, run results and local state."""
EXCLUDED_SUFFIXES = (".pyc", ".pyo", ".egg-info")


PROJECT_APP_DIRS = ("shop",)
"""What ships when the app directory is scalelab's own checkout (the default shop): the shop
package only. The checkout also holds tests, fixtures, benchmarks and the tooling itself, which an
instance never runs — and which a non-root user may not even be able to read."""


def bundle_files(directory: Path) -> dict[str, Path]:
    """Relative POSIX path -> file for everything the bundle ships, in a stable order."""
    directory = directory.resolve()
    tops = [directory / d for d in PROJECT_APP_DIRS] if directory == PROJECT_DIR else [directory]
    files: dict[str, Path] = {}
    for top in tops:
        for root, dirs, names in os.walk(top):
            dirs[:] = sorted(d for d in dirs
                             if d not in EXCLUDED_DIRS and not d.endswith(EXCLUDED_SUFFIXES))
            for name in sorted(names):
                path = Path(root) / name
                if name.endswith(EXCLUDED_SUFFIXES) or not path.is_file():
                    continue
                files[path.relative_to(directory).as_posix()] = path
    return files


def bundle_digest(files: dict[str, Path]) -> str:
    """sha256 over names and contents: the same tree always gets the same object key."""
    digest = hashlib.sha256()
    for rel, path in sorted(files.items()):
        digest.update(rel.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


@dataclass
class AppBundleArgs:
    variant: Variant


class AppBundle(pulumi.ComponentResource):
    """Bucket (public access blocked, SSE, owner-enforced) + the app bundle object."""

    bucket_name: pulumi.Output[str]
    key: str
    object_arn: pulumi.Output[str]

    def __init__(self, name: str, args: AppBundleArgs,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("scalelab:app:Bundle", name, None, opts)
        variant = args.variant
        directory = variant.app.directory
        files = bundle_files(directory) if directory.is_dir() else {}
        if not files:
            raise VariantError(f"{variant.source_file or variant.name}: scalelab:app.path points "
                               f"at {directory}, which is not a directory with files in it; give "
                               "the app's directory relative to the project.")
        child = pulumi.ResourceOptions(parent=self)
        bucket = aws.s3.Bucket(f"{name}-bucket", force_destroy=True,
                               tags=resource_tags(variant, "app-bundle"), opts=child)
        block = aws.s3.BucketPublicAccessBlock(
            f"{name}-public-access", bucket=bucket.id, block_public_acls=True,
            block_public_policy=True, ignore_public_acls=True, restrict_public_buckets=True,
            opts=child)
        owner = aws.s3.BucketOwnershipControls(
            f"{name}-ownership", bucket=bucket.id,
            rule={"object_ownership": "BucketOwnerEnforced"}, opts=child)
        sse = aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-encryption", bucket=bucket.id,
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}}],
            opts=child)
        self.key = f"bundles/{variant.name}/{bundle_digest(files)[:16]}.zip"
        archive = pulumi.AssetArchive({rel: pulumi.FileAsset(str(path))
                                       for rel, path in files.items()})
        obj = aws.s3.BucketObjectv2(
            f"{name}-object", bucket=bucket.id, key=self.key, source=archive,
            content_type="application/zip", server_side_encryption="AES256",
            tags=resource_tags(variant, "app-bundle"),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[block, owner, sse]))
        self.bucket_name = bucket.id
        self.object_arn = pulumi.Output.concat(bucket.arn, "/", obj.key)
        self.register_outputs({"bucket": self.bucket_name, "key": self.key,
                               "object_arn": self.object_arn})
