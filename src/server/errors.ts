// Errors in OpenAI's format: {"error": {"message", "type", "param", "code"}}. Handlers throw
// ApiError; the router turns it (and anything unexpected) into a JSON response, so one bad
// request never takes the server down.

export type ErrorType =
  | "invalid_request_error"
  | "authentication_error"
  | "not_found_error"
  | "server_error"
  | "service_unavailable_error";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: ErrorType = "invalid_request_error",
    readonly param: string | null = null,
    readonly code: string | null = null,
  ) {
    super(message);
    this.name = "ApiError";
  }

  body(): { error: { message: string; type: string; param: string | null; code: string | null } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

/** 400 for a bad field; `param` names it as the client wrote it (e.g. "messages[1].role"). */
export function badRequest(message: string, param: string | null = null, code: string | null = null): ApiError {
  return new ApiError(400, message, "invalid_request_error", param, code);
}

export function notFound(message: string, param: string | null = null, code = "not_found"): ApiError {
  return new ApiError(404, message, "invalid_request_error", param, code);
}

export function unauthorized(): ApiError {
  return new ApiError(401, "Incorrect API key provided.", "invalid_request_error", null, "invalid_api_key");
}

export function unavailable(message: string): ApiError {
  return new ApiError(503, message, "service_unavailable_error", null, "service_unavailable");
}

/** Any thrown value as an ApiError; unknown failures are 500s that keep their message. */
export function toApiError(e: unknown): ApiError {
  if (e instanceof ApiError) return e;
  const message = e instanceof Error ? e.message : String(e);
  return new ApiError(500, message, "server_error", null, "internal_error");
}
