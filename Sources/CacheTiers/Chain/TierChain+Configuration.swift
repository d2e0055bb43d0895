import SystemPackage
import Metrics

extension TierChain {
    /// One tier of a chain: a source and how patiently to use it.
    public struct Tier: Sendable {
        public var source: any CacheSource
        public var policy: TierPolicy

        public var name: String { source.name }

        public init(_ source: any CacheSource, policy: TierPolicy = .init()) {
            self.source = source
            self.policy = policy
        }
    }

    /// Timeouts, retries and breaker settings for one tier.
    public struct TierPolicy: Sendable {
        /// The longest one attempt may take; never more than what is left of the deadline.
        public var timeout: Duration
        /// Cancel an attempt whose progress has not moved for this long; `nil` to never.
        /// It is also the window ``minimumThroughput`` is measured over.
        public var stallTimeout: Duration?
        /// Bytes per second a download must keep up, measured over each `stallTimeout`
        /// window; slower, and the attempt is cancelled as stalled, because a peer that
        /// drips bytes is as useless as a silent one but never stops "making progress".
        /// Applies to sources whose ``CacheSourceTraits/reportsBytes``; `nil` or 0 for no
        /// floor.
        public var minimumThroughput: Int64?
        public var retry: RetryPolicy
        public var circuitBreaker: CircuitBreaker.Configuration
        /// Whether the chain writes back to this tier (if it is a ``CacheSink``) what a
        /// lower tier served.
        public var acceptsWriteBack: Bool

        public init(
            timeout: Duration = .seconds(120),
            stallTimeout: Duration? = .seconds(15),
            minimumThroughput: Int64? = TierPolicy.defaultMinimumThroughput,
            retry: RetryPolicy = .init(),
            circuitBreaker: CircuitBreaker.Configuration = .init(),
            acceptsWriteBack: Bool = true
        ) {
            self.timeout = timeout
            self.stallTimeout = stallTimeout
            self.minimumThroughput = minimumThroughput
            self.retry = retry
            self.circuitBreaker = circuitBreaker
            self.acceptsWriteBack = acceptsWriteBack
        }
    }
}

extension TierChain.TierPolicy {
    /// 16 KiB/s: below it a 100 MB archive would take almost two hours, far past any
    /// boot's deadline, while the slowest link worth waiting for moves megabytes a second.
    public static let defaultMinimumThroughput: Int64 = 16 * 1024
}

extension TierChain {
    /// Settings for the whole chain.
    public struct Configuration: Sendable {
        /// The time one restore may take, every tier and retry included.
        public var deadline: Duration
        /// Start the next tier in parallel when a tier has made no progress after a delay.
        public var hedging: Hedging?
        public var writeBack: WriteBack
        /// The retry budget of every restore through the chain; `nil` (the default) gives
        /// the chain a budget of its own. Pass one ``RetryBudget`` to several chains to
        /// cap their retries together.
        public var retryBudget: RetryBudget?
        /// Where counters and timers go; `nil` for the process's bootstrapped factory.
        public var metricsFactory: (any MetricsFactory)?
        /// Called for every ``RestoreEvent``, on the task where it happens; keep it fast.
        public var observer: (@Sendable (RestoreEvent) -> Void)?
        /// Uniform random numbers in `0..<1` for backoff jitter; injectable for tests.
        public var random: @Sendable () -> Double
        /// Folders no destination may be or contain, besides the tiers' own
        /// (``CacheSource/protectedPaths``), the root, the home folder and the current directory.
        public var protectedPaths: [ProtectedPath] = []

        public init(
            deadline: Duration = .seconds(600),
            hedging: Hedging? = nil,
            writeBack: WriteBack = .init(),
            retryBudget: RetryBudget? = nil,
            metricsFactory: (any MetricsFactory)? = nil,
            observer: (@Sendable (RestoreEvent) -> Void)? = nil,
            random: @escaping @Sendable () -> Double = { Double.random(in: 0..<1) }
        ) {
            self.deadline = deadline
            self.hedging = hedging
            self.writeBack = writeBack
            self.retryBudget = retryBudget
            self.metricsFactory = metricsFactory
            self.observer = observer
            self.random = random
        }
    }

    /// When to race the next tier against a slow one.
    public struct Hedging: Sendable, Hashable {
        /// How long a tier may go without receiving a byte before the next tier starts too.
        public var delay: Duration

        public init(delay: Duration) {
            self.delay = delay
        }
    }

    /// Offering a tree served by a lower tier to the writable tiers above it.
    public struct WriteBack: Sendable {
        public var isEnabled: Bool
        /// `true`: the restore returns after the write-back; `false`: it runs in the
        /// background and ``RestoreReport/pendingWriteBack`` finishes with it.
        public var waitForCompletion: Bool
        /// Packs the restored tree once for every tier that lacks it (zstd level 1 tar by default).
        public var packer: (any CachePacker)?
        /// How long the write-back may take once the tree is promoted (2 minutes), and how
        /// long a tier may answer nothing or take no upload byte (30 s): a stopped or
        /// black-holed cache master never holds a boot.
        public var limits: CachePublisher.Limits
        /// `true`: the write-back is handed to ``handOff`` (which `cachetiers restore`
        /// sets to start a detached process), so the restore and its caller are done as
        /// soon as the tree is promoted; the report records ``WriteBackRecord/Outcome/detached``.
        /// Without a ``handOff`` it runs in this process, as ``waitForCompletion`` says.
        public var detach: Bool
        /// Where a detached write-back writes its log (`writeBack.logFile`); `nil` lets
        /// whoever starts it choose.
        public var logFile: FilePath?
        /// Starts a write-back this process does not run, and returns a line saying where
        /// it runs (`pid 4242, log /var/log/cachetiers/write-back.log`); throws when it
        /// cannot be started, which the report records as a failed write-back.
        public var handOff: (@Sendable (DetachedWriteBack) throws -> String)?

        public init(
            isEnabled: Bool = true,
            waitForCompletion: Bool = false,
            packer: (any CachePacker)? = ArchivePacker(),
            limits: CachePublisher.Limits = .init(),
            detach: Bool = false,
            logFile: FilePath? = nil,
            handOff: (@Sendable (DetachedWriteBack) throws -> String)? = nil
        ) {
            self.isEnabled = isEnabled
            self.waitForCompletion = waitForCompletion
            self.packer = packer
            self.limits = limits
            self.detach = detach
            self.logFile = logFile
            self.handOff = handOff
        }

        public static let disabled = WriteBack(isEnabled: false)
    }
}

/// A write-back handed to another process: publish the promoted tree at ``tree`` as
/// ``key`` to the named tiers, the ones the chain would have published to.
public struct DetachedWriteBack: Sendable, Hashable {
    public var key: CacheKey
    /// The restored tree, in place at the destination.
    public var tree: FilePath
    /// The tiers above the one that served, in chain order, that accept write-back.
    public var tiers: [String]

    public init(key: CacheKey, tree: FilePath, tiers: [String]) {
        self.key = key
        self.tree = tree
        self.tiers = tiers
    }
}
