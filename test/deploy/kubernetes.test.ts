/**
 * deploy/kubernetes: every document validates against the Kubernetes API schemas
 * (kubernetes-models), and the pieces agree with each other and with the code: the ConfigMap's
 * config.json is a valid configuration, the probes and scrape annotations hit the metrics address
 * the container is given, the config volume lands where USERLAND_PROXY_CONFIG points, and the
 * pod is non-root with no capabilities, resource limits and room to drain.
 */
import { readFileSync } from 'node:fs';
import { join, dirname, basename } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { ConfigMap, Namespace } from 'kubernetes-models/v1';
import { DaemonSet } from 'kubernetes-models/apps/v1';
import { describe, expect, it } from 'vitest';
import { buildConfig } from '../../src/standalone/config.js';

const ROOT = join(import.meta.dirname, '../..');
const docs = parseAllDocuments(readFileSync(join(ROOT, 'deploy/kubernetes/userland-proxy.yaml'), 'utf8')).map((d) => {
  expect(d.errors).toEqual([]);
  return d.toJSON() as { kind: string; metadata: { name: string; namespace?: string } };
});
const byKind = (kind: string): Record<string, unknown> => {
  const doc = docs.find((d) => d.kind === kind);
  if (!doc) throw new Error(`no ${kind} in deploy/kubernetes/userland-proxy.yaml`);
  return doc as unknown as Record<string, unknown>;
};

describe('deploy/kubernetes/userland-proxy.yaml', () => {
  it('holds a Namespace, a ConfigMap and a DaemonSet that validate against the API schemas', () => {
    expect(docs.map((d) => d.kind)).toEqual(['Namespace', 'ConfigMap', 'DaemonSet']);
    expect(() => new Namespace(byKind('Namespace') as never).validate()).not.toThrow();
    expect(() => new ConfigMap(byKind('ConfigMap') as never).validate()).not.toThrow();
    expect(() => new DaemonSet(byKind('DaemonSet') as never).validate()).not.toThrow();
    // The validator is not a rubber stamp: a broken copy fails.
    const broken = structuredClone(byKind('DaemonSet')) as { spec: { template: { spec: { containers: unknown } } } };
    broken.spec.template.spec.containers = 'not a list';
    expect(() => new DaemonSet(broken as never).validate()).toThrow();
  });

  it('runs the ConfigMap configuration, probes and scrapes the metrics address it is given', () => {
    const ds = new DaemonSet(byKind('DaemonSet') as never);
    const pod = ds.spec?.template.spec;
    const c = pod?.containers[0];
    if (!pod || !c) throw new Error('no container');
    const env = Object.fromEntries((c.env ?? []).map((e) => [e.name, e.value ?? '']));
    const cm = new ConfigMap(byKind('ConfigMap') as never);
    const configPath = env.USERLAND_PROXY_CONFIG as string;
    const file = JSON.parse(cm.data?.[basename(configPath)] ?? 'null') as Record<string, unknown>;
    const config = buildConfig({}, env, file);
    expect(config.mappings.length).toBeGreaterThan(0);
    const metricsPort = config.metrics?.port;
    // Host networking: Prometheus scrapes podIP = the node's IP, and the kubelet probes it too, so
    // the listener binds every address; reachable from the node's network, it must not reload.
    expect(pod.hostNetwork).toBe(true);
    expect(config.metrics?.host.address).toBe('0.0.0.0');
    expect(config.httpReload).toBe(false);
    expect(c.livenessProbe?.httpGet).toMatchObject({ path: '/healthz', port: metricsPort });
    expect(c.readinessProbe?.httpGet).toMatchObject({ path: '/readyz', port: metricsPort });
    expect(c.livenessProbe?.httpGet?.host).toBeUndefined();
    expect(c.ports?.find((p) => p.name === 'metrics')?.containerPort).toBe(metricsPort);
    expect(ds.spec?.template.metadata?.annotations).toMatchObject({
      'prometheus.io/scrape': 'true',
      'prometheus.io/port': String(metricsPort),
      'prometheus.io/path': '/metrics',
    });
    // The config volume is the ConfigMap, mounted where USERLAND_PROXY_CONFIG points.
    const mount = c.volumeMounts?.find((m) => m.mountPath === dirname(configPath));
    expect(mount?.readOnly).toBe(true);
    expect(pod.volumes?.find((v) => v.name === mount?.name)?.configMap?.name).toBe(cm.metadata?.name);
    // SIGTERM drains for drainTimeout: the grace period must be longer.
    expect((pod.terminationGracePeriodSeconds ?? 30) * 1000).toBeGreaterThan(config.drainTimeoutMs);
  });

  it('is host-networked, non-root, capability-free and resource-limited; the image is this version', () => {
    const ds = new DaemonSet(byKind('DaemonSet') as never);
    const pod = ds.spec?.template.spec;
    const c = pod?.containers[0];
    expect(pod?.hostNetwork).toBe(true);
    expect(pod?.securityContext).toMatchObject({ runAsNonRoot: true, runAsUser: 1000 });
    expect(c?.securityContext).toMatchObject({ allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: { drop: ['ALL'] } });
    expect(c?.securityContext?.capabilities?.add ?? []).toEqual([]);
    expect(c?.resources?.limits).toMatchObject({ cpu: expect.any(String), memory: expect.any(String) });
    expect(c?.resources?.requests).toMatchObject({ cpu: expect.any(String), memory: expect.any(String) });
    const version = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version: string }).version;
    expect(c?.image).toBe(`userland-proxy:${version}`);
    expect(ds.metadata?.namespace).toBe((byKind('Namespace') as { metadata: { name: string } }).metadata.name);
  });
});
