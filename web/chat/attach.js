// Photos: the image bytes go to `POST /api/attachments` as they are (the server sniffs the type
// and keeps the file), authorised by the customer's resume token; the chat message then only
// names the attachment id. Errors come back as ApiError codes (payload_too_large,
// unsupported_media_type, …) for the message bubble to explain.

import { api } from "/common/api.js";

/** Uploads `file`; resolves with `{id, mime, bytes, url}`. */
export async function uploadImage(file, token) {
  const res = await api("/api/attachments", {
    method: "POST",
    token,
    headers: { "Content-Type": file.type || "application/octet-stream" },
    raw: file,
  });
  return res.attachment;
}
