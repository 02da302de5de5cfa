"""Cargohold's registry library: content-addressed storage of images, no HTTP.

The public surface is re-exported here; submodules hold one concept each.
"""

from .config import Config, ConfigError, load_config
from .digest import Digest, Hasher
from .errors import RegistryError
from .manifest import ParsedManifest, parse_manifest
from .names import Reference, RepositoryName, Tenant
from .registry import Registry, Repository
from .storage.blobs import BlobInfo, Upload
from .storage.driver import FileInfo, FileWriter, PathNotFound, StorageDriver, StorageError
from .storage.manifests import StoredManifest

__all__ = [
    "BlobInfo",
    "Config",
    "ConfigError",
    "Digest",
    "FileInfo",
    "FileWriter",
    "Hasher",
    "ParsedManifest",
    "PathNotFound",
    "Reference",
    "Registry",
    "RegistryError",
    "Repository",
    "RepositoryName",
    "StorageDriver",
    "StorageError",
    "StoredManifest",
    "Tenant",
    "Upload",
    "load_config",
    "parse_manifest",
]
