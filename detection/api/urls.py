from __future__ import annotations

from django.urls import path

from detection.api import views

urlpatterns = [
    path("jobs/", views.JobListCreate.as_view(), name="job-list"),
    path("jobs/<uuid:job_id>/", views.JobDetail.as_view(), name="job-detail"),
    path("jobs/<uuid:job_id>/cancel/", views.JobCancel.as_view(), name="job-cancel"),
    path("jobs/<uuid:job_id>/image/", views.JobImage.as_view(), name="job-image"),
    path("jobs/<uuid:job_id>/annotated/", views.JobAnnotated.as_view(), name="job-annotated"),
    path(
        "jobs/<uuid:job_id>/regions/<int:index>/crop/",
        views.RegionCrop.as_view(),
        name="region-crop",
    ),
]
