"""One home for the REST API contract.

- `pgjobs.validation` holds the rules every surface shares (name patterns, limits).
- `shapes` declares each request and response body once, as TypedDicts whose fields
  carry their constraints (`Annotated[int, Field(minimum=1)]`).
- `operations` says, for each route of pgjobs.web, its operation id, parameters, body
  and answers.
- `jsonschema` turns shapes into OpenAPI schemas and checks a body's field names
  against its shape.

pgjobs.web.openapi builds the document from these and the Starlette route table, so a
route without a declared operation, or an operation without a route, fails the build.
"""
