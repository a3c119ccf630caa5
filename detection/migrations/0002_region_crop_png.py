"""Crops move from files (jobs/{id}/crop-{attempt}-{index}.png) into the regions' rows.

Each region's file is read into its row; a region whose file is gone keeps no crop
(its crop link answers 404, as it did), and the count of those is printed. When none of
the files named is found, the migration stops and changes nothing: the media storage is
most likely not the one the files are in (check MEDIA_ROOT). The files themselves stay
where they are and go with their job's folder when the job is deleted. Going back
writes each row's crop out to a file again.

Web processes and workers of the version before may run while it does: a worker that
writes its results into the old column then fails them on a database error, and the
job stays running until the sweeper gives it to a worker of this version.
"""

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import migrations, models

BATCH = 500


def files_to_rows(apps, schema_editor):
    Region = apps.get_model("detection", "Region")
    batch = []
    named = missing = 0
    for region in Region.objects.exclude(crop="").only("id", "crop").iterator(chunk_size=BATCH):
        named += 1
        try:
            with default_storage.open(region.crop.name, "rb") as stored:
                region.crop_png = stored.read()
        except FileNotFoundError:
            missing += 1
            continue
        batch.append(region)
        if len(batch) >= BATCH:
            Region.objects.bulk_update(batch, ["crop_png"])
            batch = []
    Region.objects.bulk_update(batch, ["crop_png"])
    if named and missing == named:
        raise RuntimeError(
            f"None of the {named} crop files the regions name was found in the media "
            f"storage ({settings.MEDIA_ROOT}); nothing was changed. Run the migration "
            "where MEDIA_ROOT is the volume that holds them."
        )
    if missing:
        print(f"\n  {missing} of {named} crop files were missing; those regions keep no crop.")


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
