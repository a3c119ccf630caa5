"""The shapes of the API, for validation and for the OpenAPI schema.

A job's JSON is built in one place, detection.selectors.job_payload; JobOutput only
describes it, so the REST answer, the WebSocket messages and the schema agree.
"""

from __future__ import annotations

import re
from typing import Any

from rest_framework import serializers

from detection.models import Job, Stage, Status
from detection.selectors import job_payload


class JobInput(serializers.Serializer):
    image = serializers.FileField(help_text="JPEG, PNG or WebP; limits in docs/api.md.")


class QueryDateTime(serializers.DateTimeField):
    """ISO 8601; an unencoded `+01:00` arrives as ` 01:00` (a `+` in a query string is a
    space) and is read as the offset it was meant to be."""

    def to_internal_value(self, value: Any) -> Any:
        if isinstance(value, str):
            value = _SPACE_OFFSET.sub(r"+\1", value.strip())
        return super().to_internal_value(value)


_SPACE_OFFSET = re.compile(r"(?<=\d) (\d{2}(?::?\d{2})?)$")


class JobListFilter(serializers.Serializer):
    status = serializers.ChoiceField(choices=Status.choices, required=False)
    created_after = QueryDateTime(
        required=False,
        input_formats=["iso-8601"],
        help_text="Jobs created at or after this time (ISO 8601, e.g. 2026-11-24T16:00:00Z; "
        "a date alone is its midnight UTC).",
    )
    created_before = QueryDateTime(
        required=False,
        input_formats=["iso-8601"],
        help_text="Jobs created before this time (ISO 8601).",
    )

    # A window that ends before it starts is not an error: it holds no jobs (the schema
    # cannot say "later than", so a client may send one in good faith).


class ClassificationOutput(serializers.Serializer):
    label = serializers.CharField()
    score = serializers.FloatField()
    relevant = serializers.BooleanField()


class RegionOutput(serializers.Serializer):
    index = serializers.IntegerField()
    box = serializers.ListField(
        child=serializers.FloatField(), min_length=4, max_length=4, help_text="x0, y0, x1, y1"
    )
    label = serializers.CharField()
    score = serializers.FloatField()
    text = serializers.CharField(allow_blank=True)
    confidence = serializers.FloatField()
    crop_url = serializers.CharField(allow_null=True)


class ErrorOutput(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()


class PackOutput(serializers.Serializer):
    name = serializers.CharField()
    version = serializers.CharField()


class JobOutput(serializers.Serializer):
    id = serializers.UUIDField()
    status = serializers.ChoiceField(choices=Status.choices)
    stage = serializers.ChoiceField(choices=Stage.choices, allow_null=True)
    classification = ClassificationOutput(allow_null=True)
    regions = RegionOutput(many=True)
    image_url = serializers.CharField()
    annotated_url = serializers.CharField(allow_null=True)
    width = serializers.IntegerField()
    height = serializers.IntegerField()
    sha256 = serializers.CharField()
    timings_ms = serializers.DictField(child=serializers.FloatField())
    error = ErrorOutput(allow_null=True)
    attempts = serializers.IntegerField()
    pack = PackOutput(allow_null=True)
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)

    def to_representation(self, instance: Job) -> dict[str, Any]:
        return job_payload(instance)


class ErrorBody(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()
    detail = serializers.JSONField(allow_null=True)
