# The sharded initial load: a Step Functions Map runs shard_count ECS tasks at once, task I of
# N running `godwit run PIPELINE --once --shard I/N` (I = 1..N), and waits for all of them.
# Start it once: aws stepfunctions start-execution --state-machine-arn <shard_state_machine_arn>

locals {
  shard_on = var.shard_count > 0
  shards   = [for i in range(var.shard_count) : { shard = "${i + 1}/${var.shard_count}" }]

  shard_definition = {
    Comment = "godwit ${var.name}: sharded full load, ${var.shard_count} ECS tasks"
    StartAt = "Shards"
    States = {
      Shards = {
        Type = "Pass"
        Result = {
          shards = local.shards
        }
        Next = "Load"
      }
      Load = {
        Type           = "Map"
        ItemsPath      = "$.shards"
        MaxConcurrency = var.shard_count
        ItemProcessor = {
          ProcessorConfig = { Mode = "INLINE" }
          StartAt         = "RunShard"
          States = {
            RunShard = {
              Type     = "Task"
              Resource = "arn:${local.partition}:states:::ecs:runTask.sync"
              Parameters = {
                Cluster        = aws_ecs_cluster.this.arn
                TaskDefinition = aws_ecs_task_definition.batch.arn
                LaunchType     = "FARGATE"
                NetworkConfiguration = {
                  AwsvpcConfiguration = {
                    Subnets        = var.private_subnet_ids
                    SecurityGroups = [aws_security_group.godwit.id]
                    AssignPublicIp = "DISABLED"
                  }
                }
                Overrides = {
                  ContainerOverrides = [{
                    Name        = local.container
                    "Command.$" = "States.Array('run', '${local.pipeline_url}', '--once', '--shard', $.shard, '--log-format', 'json')"
                  }]
                }
              }
              Retry = [{
                ErrorEquals     = ["States.TaskFailed"]
                IntervalSeconds = 60
                MaxAttempts     = 2
                BackoffRate     = 2
              }]
              End = true
            }
          }
        }
        End = true
      }
    }
  }
}

data "aws_iam_policy_document" "states_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["states.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

resource "aws_iam_role" "states" {
  count              = local.shard_on ? 1 : 0
  name               = "${local.prefix}-shards"
  assume_role_policy = data.aws_iam_policy_document.states_assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "states" {
  statement {
    sid       = "RunTheShardTasks"
    actions   = ["ecs:RunTask"]
    resources = [local.task_family_arn]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.this.arn]
    }
  }

  statement {
    sid       = "FollowAndStopThem"
    actions   = ["ecs:DescribeTasks", "ecs:StopTask"]
    resources = ["arn:${local.partition}:ecs:${local.region}:${local.account_id}:task/${aws_ecs_cluster.this.name}/*"]
  }

  # runTask.sync learns that a task stopped from this EventBridge rule, which Step Functions
  # manages.
  statement {
    sid       = "TheSyncRule"
    actions   = ["events:PutTargets", "events:PutRule", "events:DescribeRule"]
    resources = ["arn:${local.partition}:events:${local.region}:${local.account_id}:rule/StepFunctionsGetEventsForECSTaskRule"]
  }

  statement {
    sid       = "HandTheRolesToECS"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.task.arn, aws_iam_role.execution.arn]
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "states" {
  count  = local.shard_on ? 1 : 0
  name   = "shards"
  role   = aws_iam_role.states[0].id
  policy = data.aws_iam_policy_document.states.json
}

resource "aws_sfn_state_machine" "shards" {
  #checkov:skip=CKV_AWS_284:X-Ray would trace two API calls per shard; each shard's ECS task logs to the log group.
  #checkov:skip=CKV_AWS_285:Execution logging needs logs:CreateLogDelivery and friends on "*"; the shards' own JSON logs and the task.failed alarm cover failures.
  count      = local.shard_on ? 1 : 0
  name       = "${local.prefix}-shards"
  role_arn   = aws_iam_role.states[0].arn
  definition = jsonencode(local.shard_definition)

  tags = local.tags

  lifecycle {
    precondition {
      condition     = var.mode == "full-load"
      error_message = "godwit run --shard splits a full load: the sharded load needs mode = \"full-load\" (a CDC handoff after a sharded load is not built yet)."
    }
  }
}
