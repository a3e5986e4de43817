"""Feast declarations of limaml's online features: one commented declaration per concept.

`open_feature_store` (limaml.featurestore.store) copies this folder into its working dir,
renders `feature_store.yaml` and the parquet files next to it and applies it; the rendered
dir also works with the plain CLI: `cd .cache/feast && feast apply`.
Paths are relative to the repo dir (Feast resolves them against `repo_path`).
"""

import json
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureView, Field, FileSource, PushSource, ValueType
from feast.types import Array, Float32, Int64, String

# The member meta features `member_profile` serves (the dataset's `member_features`), one
# String field each; `open_feature_store` writes the configured list into this file.
PROFILE_FIELDS: list[str] = json.loads((Path(__file__).parent / "profile_fields.json").read_text())

def parquet_source(name: str, file: str) -> FileSource:
    """Rows of `data/<file>.parquet` in the working repo, stamped by `event_timestamp`."""
    return FileSource(name=name, path=f"data/{file}.parquet", timestamp_field="event_timestamp")


# Everything here is keyed by the member, as every Kafka topic is.
member = Entity(name="member", join_keys=["member_id"], value_type=ValueType.STRING,
                description="a member (user) of the product")

# Feast requires a batch source behind a push source even when nothing is ever pushed
# offline; an (empty) parquet file that `open_feature_store` creates.
member_meta_embedding_history = parquet_source("member_meta_embedding_history", "member_meta_embedding")

# The adaptation workers push each member's freshly adapted meta embedding here.
member_meta_embedding_push = PushSource(
    name="member_meta_embedding_push",
    batch_source=member_meta_embedding_history,
)

# One meta embedding per member, read at serving time. ttl 0 = never expires: an embedding
# stays the member's best estimate until a newer one replaces it (a member silent for a
# month is still better served by it than by the prior); freshness is judged from
# newest_event_ts / adapted_at, and a model switch re-adapts everyone by a backfill.
member_meta_embedding = FeatureView(
    name="member_meta_embedding",
    entities=[member],
    ttl=timedelta(0),
    schema=[
        Field(name="meta_embedding", dtype=Array(Float32), description="[meta_dim] meta block output"),
        Field(name="model_version", dtype=String, description="model that adapted it"),
        Field(name="seq", dtype=Int64, description="member events seen when it was adapted"),
        Field(name="support_size", dtype=Int64, description="support examples it was adapted on"),
        Field(name="newest_event_ts", dtype=Int64, description="newest support example, epoch ms"),
        Field(name="adapted_at", dtype=Int64, description="when it was adapted, epoch ms"),
        Field(name="newest_produced_at", dtype=Int64,
              description="Kafka timestamp of the newest support example, epoch ms: adapted_at minus it is the "
                          "embedding's freshness"),
    ],
    source=member_meta_embedding_push,
    online=True,
)

# Snapshots of the members' profiles, written by `write_member_profiles`.
member_profile_source = parquet_source("member_profile_source", "member_profile")

# The meta features the meta block reads, as the strings of the dataset's vocabularies
# ("" = unknown). ttl 0: a profile holds until the next snapshot.
member_profile = FeatureView(
    name="member_profile",
    entities=[member],
    ttl=timedelta(0),
    schema=[Field(name=name, dtype=String) for name in PROFILE_FIELDS],
    source=member_profile_source,
    online=True,
)
