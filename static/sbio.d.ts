// Type declarations for sbio.js (the sbio-client npm package), written by hand
// from sbio.js and docs/js-client.md; keep them in step with both.
import type { ManagerOptions, Socket, SocketOptions } from "socket.io-client";

declare namespace sbio {
  /** An error from sbio: server codes (forbidden, not_found, bad_request,
   * internal, an application code) or client codes (timeout, disconnected,
   * closed, connection_refused, bad_response, bad_patch). */
  interface SbioError extends Error {
    name: "SbioError";
    code: string;
    /** connect refusals: the data the server's ConnectionRefused carried */
    data?: unknown;
    /** sbio:error reports: the event that failed */
    event?: string | null;
    /** a failed subscription's id */
    subscription?: string;
  }

  interface SbioErrorConstructor {
    new (code: string, message?: string, extra?: Record<string, unknown>): SbioError;
    (code: string, message?: string, extra?: Record<string, unknown>): SbioError;
    readonly prototype: SbioError;
  }

  type Status = "connecting" | "open" | "closed";
  type Auth = Record<string, unknown> | ((cb: (data: Record<string, unknown>) => void) => void);

  /** connect()'s options: sbio's own, plus any socket.io-client option. */
  interface ConnectOptions extends Partial<ManagerOptions & SocketOptions> {
    /** The server, e.g. "http://127.0.0.1:8282" (default: the page's origin). */
    url?: string;
    /** The handshake auth payload, passed to the namespace's on_connect(auth). */
    auth?: Auth;
    /** Default timeout of call(), in ms (10000; 0, null or Infinity: none). */
    callTimeout?: number | null;
    /** Run on every (re)connect before subscriptions are re-sent (e.g. a login). */
    onConnect?: (conn: Connection) => unknown;
    /** socket.io-client's io() (default: require("socket.io-client") or the global io). */
    io?: (url: string, options?: Partial<ManagerOptions & SocketOptions>) => Socket;
    /** false: do not connect until conn.connect() is called. */
    autoConnect?: boolean;
  }

  interface SubscribeOptions {
    /** Called with the SbioError when the subscribed handler fails. */
    onError?: (error: SbioError) => void;
    /** Ask for delta pushes: later results travel as JSON Patches (RFC 6902) when
     * smaller. The callback still gets whole values; do not modify them. */
    delta?: boolean;
  }

  /** One JSON Patch (RFC 6902) operation. */
  interface PatchOperation {
    op: "add" | "remove" | "replace" | "move" | "copy" | "test";
    path: string;
    from?: string;
    value?: unknown;
  }

  interface ConnectionEvents {
    status: (status: Status) => void;
    error: (error: SbioError) => void;
    connect_error: (error: SbioError) => void;
    connect: () => void;
    disconnect: (reason: string) => void;
    reconnecting: (attempt: number) => void;
  }

  /** One connection to one sbio namespace. */
  interface Connection {
    readonly namespace: string;
    readonly status: Status;
    /** The last connect refusal (code "connection_refused"), or null. */
    readonly refused: SbioError | null;
    callTimeout: number | null;
    /** The underlying socket.io-client Socket. */
    readonly socket: Socket;

    on<E extends keyof ConnectionEvents>(event: E, listener: ConnectionEvents[E]): this;
    on(event: string, listener: (...args: any[]) => void): this;
    once<E extends keyof ConnectionEvents>(event: E, listener: ConnectionEvents[E]): this;
    once(event: string, listener: (...args: any[]) => void): this;
    off(event: string, listener?: (...args: any[]) => void): this;

    connect(auth?: Auth): this;
    setAuth(auth: Auth): this;
    close(): this;
    /** Resolves once the status is "open"; rejects with the refusal or closing error. */
    ready(): Promise<this>;

    /** Call the server handler on_<event>(...args); resolves with its result. */
    call<T = any>(event: string, ...args: any[]): Promise<T>;
    /** A per-call timeout in ms: conn.timeout(30000).call("export", id). */
    timeout(ms: number | null): { call<T = any>(event: string, ...args: any[]): Promise<T> };
    /** Emit without waiting for a reply; failures arrive as "error" events. */
    emit(event: string, ...args: any[]): this;

    /** Subscribe to on_<event>(...args); callback gets each (changed) result. Returns the id. */
    subscribe<T = any>(event: string, args: unknown[] | unknown,
                       callback: (data: T, trigger: string) => void,
                       options?: SubscribeOptions): string;
    subscribe<T = any>(event: string, callback: (data: T, trigger: string) => void,
                       options?: SubscribeOptions): string;
    /** Stop subscriptions by id; returns how many live ones were removed. */
    unsubscribe(...ids: Array<string | string[]>): number;
    /** Send subscriptions (all by default) again now. */
    resubscribe(...ids: string[]): this;
    /** The ids of the live subscriptions. */
    subscriptions(): string[];
  }

  interface ConnectionConstructor {
    new (namespace: string, options?: ConnectOptions): Connection;
    (namespace: string, options?: ConnectOptions): Connection;
  }
}

declare const sbio: {
  /** sbio.js's version (the sbio Python package's). */
  readonly version: string;
  /**
   * Connect to an sbio namespace: "/board" (the page's server, or options.url)
   * or a full URL as io() takes it, "http://127.0.0.1:8282/board".
   */
  connect(namespace: string, options?: sbio.ConnectOptions): sbio.Connection;
  Connection: sbio.ConnectionConstructor;
  SbioError: sbio.SbioErrorConstructor;
  /** socket.io-client options sbio.js passes unless connect() overrides them. */
  defaults: Partial<ManagerOptions & SocketOptions>;
  /** Called with an exception thrown by an application callback (default: re-thrown asynchronously). */
  onCallbackError: ((error: unknown) => void) | null;
  /** `value` with a JSON Patch applied; `value` is not changed (changed containers are copied). */
  applyPatch<T = unknown>(value: unknown, patch: sbio.PatchOperation[]): T;
};

export = sbio;
export as namespace sbio;
