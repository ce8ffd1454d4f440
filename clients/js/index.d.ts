/** Options of a {@link Publisher}; see docs/publish.md. */
export interface PublisherOptions {
  /** Base URL of a gateway, e.g. `http://127.0.0.1:8080`. */
  gateway: string;
  /** `<app>/<stream>`. */
  stream: string;
  /** The tenant's bearer token. */
  token?: string;
  /** Events kept between sends; past it they are dropped. Default 65,536. */
  bufferEvents?: number;
  /** Time between sends. Default 50 ms. */
  flushIntervalMs?: number;
  /** One send's limit; a failed send drops its events. Default 5,000 ms. */
  timeoutMs?: number;
}

export interface PublisherStats {
  connected: boolean;
  subscriptions: number;
  sent: number;
  dropped: number;
}

/** Publishes one stream's events through a gateway. */
export class Publisher {
  constructor(options: PublisherOptions);
  wanted(): boolean;
  publish(event: Record<string, unknown>): void;
  stats(): PublisherStats;
  waitConnected(timeoutMs: number): Promise<boolean>;
  flush(timeoutMs?: number): Promise<boolean>;
  close(timeoutMs?: number): Promise<void>;
}
