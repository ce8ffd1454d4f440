/** Options of a {@link Publisher}; see docs/publish.md. */
export interface PublisherOptions {
  /** Base URL of a gateway (`http://127.0.0.1:8080`), a comma-separated list, or an array (at most 16). */
  gateway: string | string[];
  /** `<app>/<stream>`. */
  stream: string;
  /** The tenant's bearer token. */
  token?: string;
  /** Events kept per gateway between sends; past it they are dropped. Default 65,536. */
  bufferEvents?: number;
  /** Bytes of JSON kept per gateway between sends (at most 7 MiB). Default 4 MiB. */
  bufferBytes?: number;
  /** Time between sends. Default 50 ms. */
  flushIntervalMs?: number;
  /** One send's limit; a failed send drops its events. Default 5,000 ms. */
  timeoutMs?: number;
}

export interface PublisherStats {
  connected: boolean;
  gatewaysConnected: number;
  subscriptions: number;
  sent: number;
  dropped: number;
  /** Why a control connection last failed (e.g. `the gateway answered 401 unauthorized: …`); null once every gateway answered. */
  lastError: string | null;
}

/** Publishes one stream's events through one gateway or several. */
export class Publisher {
  constructor(options: PublisherOptions);
  wanted(): boolean;
  publish(event: Record<string, unknown>): void;
  stats(): PublisherStats;
  waitConnected(timeoutMs: number): Promise<boolean>;
  flush(timeoutMs?: number): Promise<boolean>;
  close(timeoutMs?: number): Promise<void>;
}
