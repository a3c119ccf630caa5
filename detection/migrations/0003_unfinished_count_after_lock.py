"""A function for the submit's cap on unfinished jobs: the owner's lock and the count
in one round trip (detection.jobs._check_unfinished_cap).

A single statement cannot do both: its snapshot is taken when it starts, before the
lock is granted, so it would not see the job that the lock's last holder committed.
A VOLATILE PL/pgSQL function takes a fresh snapshot for each statement it runs, so its
count, run after the lock, sees every submit that held the lock before.
"""

from django.db import migrations

CREATE = """
CREATE FUNCTION snapread_unfinished_after_lock(lock_key text, owner bigint, statuses text[])
RETURNS bigint
LANGUAGE plpgsql VOLATILE
AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(lock_key, 0));
    RETURN (SELECT count(*) FROM detection_job WHERE owner_id = owner AND status = ANY (statuses));
END
$$;
"""
DROP = "DROP FUNCTION snapread_unfinished_after_lock(text, bigint, text[]);"


class Migration(migrations.Migration):
    dependencies = [("detection", "0002_region_crop_png")]

    operations = [migrations.RunSQL(CREATE, DROP)]
