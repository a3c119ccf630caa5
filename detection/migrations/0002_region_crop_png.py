"""Crops move from files (jobs/{id}/crop-{attempt}-{index}.png) into the regions' rows.

Each region's file is read into its row; a region whose file is gone keeps no crop
(its crop link answers 404, as it did). The files themselves stay where they are and go
with their job's folder when the job is deleted. Going back writes each row's crop out
to a file again.
"""

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import migrations, models

BATCH = 500


def files_to_rows(apps, schema_editor):
    Region = apps.get_model("detection", "Region")
    batch = []
    for region in Region.objects.exclude(crop="").only("id", "crop").iterator(chunk_size=BATCH):
        try:
            with default_storage.open(region.crop.name, "rb") as stored:
                region.crop_png = stored.read()
        except FileNotFoundError:
            continue
        batch.append(region)
        if len(batch) >= BATCH:
            Region.objects.bulk_update(batch, ["crop_png"])
            batch = []
    Region.objects.bulk_update(batch, ["crop_png"])


def rows_to_files(apps, schema_editor):
    Region = apps.get_model("detection", "Region")
    batch = []
    regions = Region.objects.exclude(crop_png=b"").only("id", "job_id", "index", "crop_png")
    for region in regions.iterator(chunk_size=BATCH):
        region.crop = default_storage.save(
            f"jobs/{region.job_id}/crop-{region.index:03d}.png", ContentFile(region.crop_png)
        )
        batch.append(region)
        if len(batch) >= BATCH:
            Region.objects.bulk_update(batch, ["crop"])
            batch = []
    Region.objects.bulk_update(batch, ["crop"])


class Migration(migrations.Migration):
    dependencies = [("detection", "0001_initial")]

    operations = [
        migrations.AddField(
            model_name="region",
            name="crop_png",
            field=models.BinaryField(blank=True, default=b"", editable=False),
        ),
        migrations.RunPython(files_to_rows, rows_to_files),
        migrations.RemoveField(model_name="region", name="crop"),
    ]
