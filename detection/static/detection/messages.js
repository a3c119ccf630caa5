// What the page says to people: each step as it runs, and what went wrong and what to
// try, by the API's codes (docs/api.md). Loaded before app.js, which uses these names.
"use strict";

// Each step while it runs (and the upload before them).
const DOING = {
  uploading: "Uploading the photo",
  queued: "Waiting for a worker",
  classify: "Checking that it is a problem-book page",
  detect: "Finding the problem numbers",
  crop: "Cutting out each number",
  ocr: "Reading each number",
};

const REJECTED = {
  title: "This does not look like a problem-book page.",
  why: (job) =>
    `Each photo is checked first, and numbers are looked for only on pages of a problem book. ` +
    `This one was taken for “${job.classification?.label ?? "something else"}”` +
    (job.classification ? ` (${Math.round(job.classification.score * 100)}% sure)` : "") +
    `, so no numbers were looked for.`,
  try:
    "Photograph one page of the book, flat and upright, in even light, with the page " +
    "filling most of the picture.",
};

// A page read in part: the reader found these numbers but could not make them out (they
// are marked "?" on the photo), most often because the photo is blurred or the print small.
const UNREAD = (unread, found) =>
  `${unread === found ? "None of them" : `${unread} of them`} could not be read (marked “?”): ` +
  "the print is too small or too blurred in this photo. A sharper photo, taken closer to " +
  "the page, reads them.";

// Failures of a job that was accepted, by error.code (docs/api.md).
const FAILED = {
  time_limit: {
    title: "Reading this photo took too long.",
    why: "The workers stop a photo that takes longer than the time limit; they may be busy, or the photo very large.",
    try: "Send it again in a moment. A smaller photo (a few megapixels is plenty) reads faster.",
  },
  pack_unavailable: {
    title: "The reader is not available right now.",
    why: "The worker could not load its reading model. This is not caused by your photo.",
    try: "Send it again later, and tell whoever runs this service if it keeps happening.",
  },
  too_many_attempts: {
    title: "The reader stopped several times on this photo.",
    why: "The worker reading it stopped answering (restarted or lost) more than once, so it was given up.",
    try: "Send it again. If this photo keeps failing, try another photo of the same page.",
  },
  reader_error: {
    title: "The reader hit an error on this photo.",
    why: "Something in the reading chain failed; the details below help whoever runs this service.",
    try: "Send it again, or another photo of the page. If it keeps failing, pass on the code below.",
  },
  too_many_regions: {
    title: "Far more numbers were found than a page can hold.",
    why: "The photo may show a dense table or a repeating pattern rather than a page of problems.",
    try: "Photograph a single page of problems, close enough that the text is easy to read.",
  },
  crop_too_large: {
    title: "A region found was too large to keep.",
    why: "Something the reader took for a problem number covers a large part of the photo.",
    try: "Photograph the page so that it fills the picture, without big objects in front of it.",
  },
  crops_too_large: {
    title: "The regions found were too large, together, to keep.",
    why: "What the reader took for problem numbers covers much of the photo, many times over.",
    try: "Photograph a single page of problems so that it fills the picture.",
  },
};
const FAILED_OTHER = {
  title: "Reading this photo failed.",
  why: "The job stopped with an error.",
  try: "Send it again. If it keeps failing, pass on the code below to whoever runs this service.",
};

// Uploads the API refused (nothing was stored), by the error body's code.
const REFUSED = {
  file_too_large: {
    title: "This file is too large.",
    try: "Send a smaller photo: most cameras and phones can save a smaller size, or crop it to the page.",
  },
  too_many_pixels: {
    title: "This photo has too many pixels.",
    try: "Resize it to a few megapixels (the text only needs to be readable) and send it again.",
  },
  unsupported_format: {
    title: "This is not a JPEG, PNG or WebP image.",
    try: "Export or save the photo as JPEG or PNG (HEIC photos need converting first) and send it again.",
  },
  corrupt_image: {
    title: "This image could not be opened.",
    try: "The file may be damaged or incomplete: take or export the photo again.",
  },
  missing_image: { title: "No image arrived.", try: "Choose the photo again." },
  throttled: {
    title: "Too many photos in a short time.",
    try: (e) => `Wait ${e.body?.detail?.retry_after ?? "a few"} seconds, then send it again.`,
  },
  too_many_unfinished_jobs: {
    title: "You have many photos still waiting to be read.",
    try: "Wait for some of them to finish, then send this one again.",
  },
  not_authenticated: { title: "You are logged out.", try: "Log in again (reload the page), then send it again." },
  authentication_failed: { title: "You are logged out.", try: "Log in again (reload the page), then send it again." },
  network: {
    title: "The server could not be reached.",
    try: "Check your connection and send the photo again.",
  },
};

