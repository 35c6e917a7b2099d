/**
 * Prometheus metrics (prom-client), per client: requests, bytes, instances, withheld instances,
 * denials by reason, request duration, upstream latency, de-identification time, and the
 * audit trail's and spool's state. Served on a separate listener (`metrics.host`/`port`) or on
 * the main one at /metrics behind an admin token (`metrics.apiKeySha256`), never to clients.
 * Labels are client ids, routes, codes and reasons: never a UID or a value.
 */
import { createRequire } from 'node:module';
import type { Counter, Histogram, Registry } from 'prom-client';
import type { AuditForwarder, RequestAudit } from './sink.js';

/**
 * prom-client, loaded when metrics are configured (it adds about 6 MB to the gateway's resident
 * memory; a gateway without `metrics` never loads it).
 */
const promClient = (): typeof import('prom-client') => createRequire(import.meta.url)('prom-client') as typeof import('prom-client');

export class GatewayMetrics implements AuditForwarder {
  readonly registry: Registry;
  private readonly requests: Counter<'client' | 'route' | 'status' | 'outcome'>;
  private readonly bytes: Counter<'client' | 'route'>;
  private readonly instances: Counter<'client'>;
  private readonly withheld: Counter<'client'>;
  private readonly denials: Counter<'client' | 'reason'>;
  private readonly studies: Counter<'client'>;
  private readonly duration: Histogram<'client' | 'route'>;
  readonly upstream: Histogram<'client' | 'kind' | 'status'>;
  readonly deid: Histogram<'client' | 'kind'>;

  constructor(gauges: { auditHealthy: () => boolean; spoolPending?: (() => number) | undefined }) {
    const { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } = promClient();
    this.registry = new Registry();
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: 'deid_gateway_' });
    this.requests = new Counter({ name: 'deid_gateway_requests_total', help: 'Requests by client, route, HTTP status and outcome', labelNames: ['client', 'route', 'status', 'outcome'], registers });
    this.bytes = new Counter({ name: 'deid_gateway_response_bytes_total', help: 'Response body bytes sent', labelNames: ['client', 'route'], registers });
    this.instances = new Counter({ name: 'deid_gateway_instances_total', help: 'Instances (or their metadata, frames, bulk data) released', labelNames: ['client'], registers });
    this.withheld = new Counter({ name: 'deid_gateway_withheld_instances_total', help: 'Instances withheld by the pixel policy', labelNames: ['client'], registers });
    this.studies = new Counter({ name: 'deid_gateway_studies_released_total', help: 'Studies released (per request)', labelNames: ['client'], registers });
    this.denials = new Counter({ name: 'deid_gateway_denials_total', help: 'Denied requests by reason (the audit reason, or the error code)', labelNames: ['client', 'reason'], registers });
    this.duration = new Histogram({ name: 'deid_gateway_request_duration_seconds', help: 'Request duration', labelNames: ['client', 'route'], buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60], registers });
    this.upstream = new Histogram({ name: 'deid_gateway_upstream_duration_seconds', help: 'Time to the PACS response headers', labelNames: ['client', 'kind', 'status'], buckets: [0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10], registers });
    this.deid = new Histogram({ name: 'deid_gateway_deidentification_seconds', help: 'De-identification time per object (DICOM JSON object or Part 10 header)', labelNames: ['client', 'kind'], buckets: [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05], registers });
    new Gauge({ name: 'deid_gateway_audit_healthy', help: '1 when the audit trail can be written', registers, collect() { this.set(gauges.auditHealthy() ? 1 : 0); } });
    if (gauges.spoolPending) {
      const pending = gauges.spoolPending;
      new Gauge({ name: 'deid_gateway_audit_spool_pending_bytes', help: 'Audit messages spooled and not yet delivered to the audit record repository', registers, collect() { this.set(pending()); } });
    }
  }

  forward(r: RequestAudit): void {
    const client = r.client ?? '-';
    this.requests.inc({ client, route: r.route, status: String(r.status), outcome: r.outcome });
    if (r.bytes) this.bytes.inc({ client, route: r.route }, r.bytes);
    if (r.instances) this.instances.inc({ client }, r.instances);
    if (r.withheld) this.withheld.inc({ client }, r.withheld);
    if (r.studies.length) this.studies.inc({ client }, r.studies.length);
    if (r.outcome === 'denied' || r.reason) this.denials.inc({ client, reason: r.reason ?? r.code ?? 'unknown' });
    this.duration.observe({ client, route: r.route }, r.durationMs / 1000);
  }

  async close(): Promise<void> { /* nothing to flush */ }
}
