# ---------------------------------------------------------------------------------------
# Naming and network
# ---------------------------------------------------------------------------------------

variable "name" {
  description = "Pipeline name: names the pipeline (godwit's `name`, so its slot, publication and state), and prefixes every AWS resource."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9_-]{1,40}$", var.name))
    error_message = "name must be 1-40 characters of a-z, 0-9, _ and - (godwit allows 56; AWS resource names need the rest)."
  }
}

variable "tags" {
  description = "Tags added to every resource."
  type        = map(string)
  default     = {}
}

variable "vpc_id" {
  description = "VPC the tasks, the Lambda function and Redis run in."
  type        = string

  validation {
    condition     = can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "vpc_id must look like vpc-0123456789abcdef0."
  }
}

variable "private_subnet_ids" {
  description = "Private subnets (two or more, in different availability zones) for the tasks, the Lambda function and Redis. They need a route to PostgreSQL and to S3, SNS and Secrets Manager (NAT or VPC endpoints)."
  type        = list(string)

  validation {
    condition     = length(var.private_subnet_ids) >= 2 && alltrue([for s in var.private_subnet_ids : can(regex("^subnet-[0-9a-f]+$", s))])
    error_message = "Give at least two subnet ids (subnet-...), in different availability zones (Redis Multi-AZ needs two)."
  }
}

variable "database_cidr_blocks" {
  description = "CIDR blocks of the PostgreSQL source: the only PostgreSQL destinations the security group lets godwit reach."
  type        = list(string)

  validation {
    condition     = length(var.database_cidr_blocks) > 0 && alltrue([for c in var.database_cidr_blocks : can(cidrhost(c, 0)) && c != "0.0.0.0/0"])
    error_message = "Give the database's CIDR blocks (e.g. [\"10.0.12.0/24\"]); 0.0.0.0/0 is refused."
  }
}

variable "database_port" {
  description = "PostgreSQL port."
  type        = number
  default     = 5432

  validation {
    condition     = var.database_port > 0 && var.database_port < 65536
    error_message = "database_port must be a TCP port (1-65535)."
  }
}

variable "https_egress_cidr_blocks" {
  description = "Where godwit may open HTTPS (443) connections: S3, SNS and Secrets Manager, through a NAT gateway (0.0.0.0/0, the default) or the CIDR blocks of VPC interface endpoints."
  type        = list(string)
  default     = ["0.0.0.0/0"]

  validation {
    condition     = length(var.https_egress_cidr_blocks) > 0 && alltrue([for c in var.https_egress_cidr_blocks : can(cidrhost(c, 0))])
    error_message = "https_egress_cidr_blocks must be CIDR blocks."
  }
}

variable "s3_prefix_list_id" {
  description = "Prefix list of an S3 gateway endpoint (pl-...), allowed on 443 besides https_egress_cidr_blocks. null: none."
  type        = string
  default     = null
}

# ---------------------------------------------------------------------------------------
# Source and secrets
# ---------------------------------------------------------------------------------------

variable "database_url" {
  description = "PostgreSQL URL (postgres://user:password@host:5432/db?sslmode=verify-full&sslrootcert=system). Stored in Secrets Manager and handed to godwit as GODWIT_DATABASE_URL; the pipeline file refers to it as $${GODWIT_DATABASE_URL}. It is also in the terraform state: keep the state encrypted."
  type        = string
  sensitive   = true

  validation {
    condition     = can(regex("^postgres(ql)?://", var.database_url))
    error_message = "database_url must be a postgres:// or postgresql:// URL."
  }
}

# ---------------------------------------------------------------------------------------
# The pipeline file
# ---------------------------------------------------------------------------------------

variable "mode" {
  description = "godwit mode: full-load, cdc or full-load-and-cdc."
  type        = string
  default     = "full-load-and-cdc"

  validation {
    condition     = contains(["full-load", "cdc", "full-load-and-cdc"], var.mode)
    error_message = "mode must be full-load, cdc or full-load-and-cdc."
  }
}

variable "tables_include" {
  description = "[tables] include: schema.table globs."
  type        = list(string)
  default     = ["public.*"]
}

variable "tables_exclude" {
  description = "[tables] exclude: schema.table globs."
  type        = list(string)
  default     = []
}

variable "load_parallel" {
  description = "[load] parallel: tables or segments loaded at once."
  type        = number
  default     = 4

  validation {
    condition     = var.load_parallel >= 1 && var.load_parallel <= 64
    error_message = "load_parallel must be 1-64."
  }
}

variable "target_prefix" {
  description = "Prefix inside the bucket for the data and godwit's state (s3://BUCKET/PREFIX). The IAM policy grants only this prefix and pipelines/."
  type        = string
  default     = "lake"

  validation {
    condition     = can(regex("^[A-Za-z0-9!_.*'()-]+(/[A-Za-z0-9!_.*'()-]+)*$", var.target_prefix)) && var.target_prefix != "pipelines"
    error_message = "target_prefix must be a relative key prefix without leading or trailing / (and not pipelines, where the pipeline file lives)."
  }
}

variable "target_format" {
  description = "[target] format: parquet or csv."
  type        = string
  default     = "parquet"

  validation {
    condition     = contains(["parquet", "csv"], var.target_format)
    error_message = "target_format must be parquet or csv."
  }
}

variable "cdc_max_batch_interval" {
  description = "[target] cdc_max_batch_interval: how often CDC files are written."
  type        = string
  default     = "60s"

  validation {
    condition     = can(regex("^([0-9]+(ms|s|m|h))+$", var.cdc_max_batch_interval))
    error_message = "cdc_max_batch_interval must be a duration such as 60s, 5m or 1h30m."
  }
}

variable "date_partitioning" {
  description = "[target] date_partitioning: none, yyyy/mm/dd or yyyy/mm/dd/hh."
  type        = string
  default     = "none"

  validation {
    condition     = contains(["none", "yyyy/mm/dd", "yyyy/mm/dd/hh"], var.date_partitioning)
    error_message = "date_partitioning must be none, yyyy/mm/dd or yyyy/mm/dd/hh."
  }
}

variable "cdc_lag_threshold" {
  description = "[notify] cdc_lag_threshold: a commit arriving later than this emits cdc.lag (and so the alarm)."
  type        = string
  default     = "5m"

  validation {
    condition     = can(regex("^([0-9]+(ms|s|m|h))+$", var.cdc_lag_threshold))
    error_message = "cdc_lag_threshold must be a duration such as 5m."
  }
}

variable "memory_limit" {
  description = "[limits] memory: godwit's buffer budget. Keep it about 128 MiB under the task's memory (godwit's fixed overhead is under 96 MiB)."
  type        = string
  default     = "1GiB"

  validation {
    condition     = can(regex("^[0-9]+(B|KiB|MiB|GiB|KB|MB|GB)?$", var.memory_limit))
    error_message = "memory_limit must be a size such as 512MiB or 1GiB."
  }
}

variable "recoverable_retries" {
  description = "[errors] recoverable_retries: -1 retries forever (a service), a small number suits a scheduled batch."
  type        = number
  default     = -1

  validation {
    condition     = var.recoverable_retries >= -1
    error_message = "recoverable_retries must be -1 (forever) or a count."
  }
}

variable "metrics_port" {
  description = "Port of [metrics] listen. godwit listens on 127.0.0.1 only (the container health check asks it there) unless metrics_listen_all is true."
  type        = number
  default     = 9187

  validation {
    condition     = var.metrics_port >= 1024 && var.metrics_port < 65536
    error_message = "metrics_port must be 1024-65535 (the container runs as a non-root user)."
  }
}

variable "metrics_listen_all" {
  description = "Serve /metrics on every interface (0.0.0.0) so a Prometheus in the VPC can scrape it; the security group still has no ingress rule: add one for your scraper."
  type        = bool
  default     = false
}

variable "health_threshold" {
  description = "[metrics] health_threshold: /healthz (and so the ECS health check) fails once nothing moved for longer than this."
  type        = string
  default     = "120s"

  validation {
    condition     = can(regex("^([0-9]+(ms|s|m|h))+$", var.health_threshold))
    error_message = "health_threshold must be a duration such as 120s."
  }
}

# ---------------------------------------------------------------------------------------
# S3
# ---------------------------------------------------------------------------------------

variable "bucket_name" {
  description = "Name of the bucket to create. null: <name>-godwit-<account id>."
  type        = string
  default     = null
}

variable "bucket_force_destroy" {
  description = "Let terraform destroy delete a bucket that still holds objects."
  type        = bool
  default     = false
}

variable "lifecycle_noncurrent_days" {
  description = "Days after which replaced or deleted object versions are removed (0: keep them)."
  type        = number
  default     = 30

  validation {
    condition     = var.lifecycle_noncurrent_days >= 0
    error_message = "lifecycle_noncurrent_days must be 0 or more."
  }
}

variable "lifecycle_transition_days" {
  description = "Days after which data objects under target_prefix move to STANDARD_IA (0: never). godwit's state objects under _godwit/ stay in STANDARD."
  type        = number
  default     = 0

  validation {
    condition     = var.lifecycle_transition_days == 0 || var.lifecycle_transition_days >= 30
    error_message = "lifecycle_transition_days must be 0 (off) or at least 30 (S3's minimum for STANDARD_IA)."
  }
}

variable "access_log_bucket" {
  description = "Bucket that receives the data bucket's S3 server access logs (null: no access logging)."
  type        = string
  default     = null
}

# ---------------------------------------------------------------------------------------
# SNS
# ---------------------------------------------------------------------------------------

variable "alert_email" {
  description = "E-mail address subscribed to the SNS topic (events and alarms); null: no subscription."
  type        = string
  default     = null

  validation {
    condition     = var.alert_email == null || can(regex("^[^@ ]+@[^@ ]+$", var.alert_email))
    error_message = "alert_email must be an e-mail address or null."
  }
}

# ---------------------------------------------------------------------------------------
# Redis (ElastiCache)
# ---------------------------------------------------------------------------------------

variable "redis_enabled" {
  description = "Create an ElastiCache Redis replication group and a [cache] section."
  type        = bool
  default     = false
}

variable "redis_cluster_mode" {
  description = "Cluster mode enabled (sharded; godwit's cache.cluster = true, via the configuration endpoint)."
  type        = bool
  default     = false
}

variable "redis_node_type" {
  description = "ElastiCache node type."
  type        = string
  default     = "cache.t4g.small"
}

variable "redis_engine_version" {
  description = "Redis engine version."
  type        = string
  default     = "7.1"
}

variable "redis_num_node_groups" {
  description = "Shards in cluster mode (ignored otherwise)."
  type        = number
  default     = 2

  validation {
    condition     = var.redis_num_node_groups >= 1 && var.redis_num_node_groups <= 500
    error_message = "redis_num_node_groups must be 1-500."
  }
}

variable "redis_replicas" {
  description = "Replicas per shard (at least 1: Multi-AZ with automatic failover needs one)."
  type        = number
  default     = 1

  validation {
    condition     = var.redis_replicas >= 1 && var.redis_replicas <= 5
    error_message = "redis_replicas must be 1-5."
  }
}

variable "redis_snapshot_retention_days" {
  description = "Days of automatic Redis snapshots."
  type        = number
  default     = 7

  validation {
    condition     = var.redis_snapshot_retention_days >= 1 && var.redis_snapshot_retention_days <= 35
    error_message = "redis_snapshot_retention_days must be 1-35."
  }
}

variable "redis_key_prefix" {
  description = "[cache] key_prefix."
  type        = string
  default     = ""
}

variable "cache_projections" {
  description = "[[cache.projections]]: table, type (hash, json, string, zset, set, geo, invalidate, stream, publish), key template, and the keys the type uses."
  type = list(object({
    table  = string
    type   = string
    key    = string
    fields = optional(list(string))
    member = optional(string)
    score  = optional(string)
    ttl    = optional(string)
  }))
  default = []

  validation {
    condition     = alltrue([for p in var.cache_projections : contains(["hash", "json", "string", "zset", "set", "geo", "invalidate", "stream", "publish"], p.type)])
    error_message = "Each projection's type must be hash, json, string, zset, set, geo, invalidate, stream or publish."
  }
}

# ---------------------------------------------------------------------------------------
# Container (ECS on Fargate)
# ---------------------------------------------------------------------------------------

variable "image" {
  description = "godwit container image (built from the repository's Dockerfile), e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com/godwit:0.1.0."
  type        = string

  validation {
    condition     = length(var.image) > 0 && !endswith(var.image, ":latest")
    error_message = "Give an image with a fixed tag or digest (not :latest)."
  }
}

variable "ecr_repository_arn" {
  description = "ARN of the ECR repository holding the image: the task execution role may pull from it. null: the image is public."
  type        = string
  default     = null
}

variable "task_cpu" {
  description = "Fargate CPU units of a task (1024 = 1 vCPU)."
  type        = number
  default     = 1024

  validation {
    condition     = contains([256, 512, 1024, 2048, 4096, 8192, 16384], var.task_cpu)
    error_message = "task_cpu must be a Fargate CPU size: 256, 512, 1024, 2048, 4096, 8192 or 16384."
  }
}

variable "task_memory" {
  description = "Fargate memory of a task in MiB (must fit task_cpu); memory_limit should be about 128 MiB under it."
  type        = number
  default     = 2048

  validation {
    condition     = var.task_memory >= 512 && var.task_memory <= 122880
    error_message = "task_memory must be 512-122880 MiB."
  }
}

variable "cpu_architecture" {
  description = "CPU architecture of the image and the Lambda package: X86_64 or ARM64."
  type        = string
  default     = "X86_64"

  validation {
    condition     = contains(["X86_64", "ARM64"], var.cpu_architecture)
    error_message = "cpu_architecture must be X86_64 or ARM64."
  }
}

variable "log_retention_days" {
  description = "Days the CloudWatch log group keeps godwit's JSON log lines."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be a value CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, ..., 365, ...)."
  }
}

# ---------------------------------------------------------------------------------------
# Run shapes
# ---------------------------------------------------------------------------------------

variable "batch_schedule" {
  description = "EventBridge Scheduler expression for the batch shape (`godwit run PIPELINE --once` as an ECS task), e.g. rate(1 hour) or cron(0 2 * * ? *). null: no scheduled batch."
  type        = string
  default     = null

  validation {
    condition     = var.batch_schedule == null || can(regex("^(rate|cron|at)\\(.+\\)$", var.batch_schedule))
    error_message = "batch_schedule must be rate(...), cron(...) or at(...)."
  }
}

variable "schedule_timezone" {
  description = "Time zone of cron schedules."
  type        = string
  default     = "UTC"
}

variable "cdc_service" {
  description = "Run the long-running ECS service (continuous CDC: `godwit run PIPELINE`) with a container health check (`godwit health`)."
  type        = bool
  default     = false
}

variable "shard_count" {
  description = "Sharded initial load in N shards: a Step Functions state machine runs ECS tasks `godwit run PIPELINE --once --shard I/N` at once — I = 1..N for mode full-load; I = 2..N for full-load-and-cdc, where the batch task and the CDC service run as shard 1/N and coordinate. 0: no state machine."
  type        = number
  default     = 0

  validation {
    condition     = var.shard_count == 0 || (var.shard_count >= 2 && var.shard_count <= 64)
    error_message = "shard_count must be 0 (off) or 2-64."
  }
}

variable "lambda_zip_path" {
  description = "Path of the Lambda package (a zip holding `bootstrap`, built with `cargo lambda build --release --features lambda --output-format zip`). null: no Lambda function."
  type        = string
  default     = null
}

variable "lambda_schedule" {
  description = "EventBridge Scheduler expression that invokes the Lambda function (null: none)."
  type        = string
  default     = "rate(15 minutes)"

  validation {
    condition     = var.lambda_schedule == null || can(regex("^(rate|cron|at)\\(.+\\)$", var.lambda_schedule))
    error_message = "lambda_schedule must be rate(...), cron(...) or at(...)."
  }
}

variable "lambda_memory" {
  description = "Lambda memory in MiB (memory_limit should be about 128 MiB under it)."
  type        = number
  default     = 2048

  validation {
    condition     = var.lambda_memory >= 256 && var.lambda_memory <= 10240
    error_message = "lambda_memory must be 256-10240 MiB."
  }
}

variable "lambda_timeout" {
  description = "Lambda timeout in seconds (at most 900: a run that needs longer belongs on ECS)."
  type        = number
  default     = 900

  validation {
    condition     = var.lambda_timeout >= 30 && var.lambda_timeout <= 900
    error_message = "lambda_timeout must be 30-900 seconds."
  }
}

variable "lambda_event" {
  description = "The JSON event the schedule sends to the Lambda function. null: {\"pipeline\": \"s3://BUCKET/pipelines/NAME.toml\"}."
  type        = string
  default     = null
}

# ---------------------------------------------------------------------------------------
# Alarms
# ---------------------------------------------------------------------------------------

variable "alarm_period_seconds" {
  description = "Period of the log-event alarms: one matching log line in a period raises the alarm."
  type        = number
  default     = 300

  validation {
    condition     = contains([60, 300, 900, 3600], var.alarm_period_seconds)
    error_message = "alarm_period_seconds must be 60, 300, 900 or 3600."
  }
}
