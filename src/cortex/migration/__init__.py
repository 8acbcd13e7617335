"""cortex.migration: moving from the original cortex (config migration; checkpoints: cortex.model.conversion)."""

from cortex.migration.config import MigrationResult, ReportEntry, compose_v1_config, migrate_v1_config

__all__ = ["MigrationResult", "ReportEntry", "compose_v1_config", "migrate_v1_config"]
